"""A lakeFS API test double: the REST subset the lakeFS Python SDK uses, served over HTTP from memory."""

from tests.lakefs_double.server import LakeFSDouble, run_lakefs_double

__all__ = ["LakeFSDouble", "run_lakefs_double"]
