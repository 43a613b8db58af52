-- Gateway API keys: only the sha256 of the whole key is stored.
create table if not exists api_keys (
    key_id text primary key,
    name text not null default '',
    roles text[] not null check (cardinality(roles) > 0),
    key_hash text not null check (key_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);
