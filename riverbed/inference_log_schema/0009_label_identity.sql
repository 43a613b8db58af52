-- Labels are idempotent per label identity, not per Kafka offset: (dataset, sample id, request id, record index,
-- label event id). The same label event published again (a producer retry, a replay of the topic) lands at new
-- offsets and must still be stored once. The primary key on (topic, partition, offset) stays: a redelivered
-- message is a no-op as before.
--
-- Existing rows migrate with the identity they had: their message position, 'kafka:<topic>:<partition>:<offset>'.
-- An insert that names no label event id (older writers) gets the same, from a trigger, so the column is never null.
alter table prediction_labels add column if not exists label_event_id text;

update prediction_labels
set label_event_id = 'kafka:' || topic || ':' || partition || ':' || "offset"
where label_event_id is null;

create or replace function riverbed_label_event_id() returns trigger
language plpgsql as $$
begin
    if new.label_event_id is null then
        new.label_event_id := 'kafka:' || new.topic || ':' || new.partition || ':' || new."offset";
    end if;
    return new;
end
$$;

drop trigger if exists prediction_labels_event_id on prediction_labels;
create trigger prediction_labels_event_id before insert or update on prediction_labels
    for each row execute function riverbed_label_event_id();

alter table prediction_labels alter column label_event_id set not null;
alter table prediction_labels drop constraint if exists prediction_labels_event_id_length;
alter table prediction_labels add constraint prediction_labels_event_id_length
    check (length(label_event_id) between 1 and 600);

-- NULL ids compare equal here (coalesce), so a label by sample id alone has one identity too.
create unique index if not exists prediction_labels_identity on prediction_labels
    (dataset, coalesce(sample_id, ''), coalesce(request_id, ''), record_index, label_event_id);

do $grants$
begin
    if not exists (select 1 from pg_roles where rolname = 'riverbed_owner') then
        return;
    end if;
    begin
        alter function riverbed_label_event_id() owner to riverbed_owner;
    exception when insufficient_privilege then
        raise notice 'riverbed_label_event_id() stays owned by % (%)', current_user, sqlerrm;
    end;
    -- prediction_labels keeps its grants (0006): the pipeline inserts, everyone else reads; the new column is
    -- covered by those table-level grants.
end
$grants$;
