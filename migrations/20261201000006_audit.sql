-- The audit trail (DESIGN.md, "Audit").
--
-- `audit_log` is append-only and hash-chained. Each row holds the events of one group commit (the
-- events of the requests that waited together, and the write events linked with them), as their
-- exact JSON texts, one per line. Row n stores hash_n = SHA-256(hash_{n-1} || events_n) (hash_0 is
-- 32 zero bytes). Events are numbered across rows: the AuditEvent ids are first_id, first_id + 1,
-- … The other columns are derived from the events for finding rows; `fhirgate audit verify`
-- recomputes the hashes, the numbering and these columns, so an edit anywhere is found.
create table audit_log (
    seq          bigint      primary key,
    first_id     bigint      not null unique,
    count        int         not null check (count > 0),
    recorded_min timestamptz not null,
    recorded_max timestamptz not null,
    -- the union of the events' search terms: `t|type`, `s|subtype`, `x|action`, `o|outcome`,
    -- `a|` + each agent (`Type/id` or `client:ID`), `p|Patient/id`, `e|Type/id` (no `_history`)
    terms        text[]      not null,
    events       text        not null,
    prev_hash    bytea       not null,
    hash         bytea       not null
);
-- Events are appended in time order, so a BRIN index serves date ranges at a fraction of a
-- B-tree's cost per insert.
create index audit_log_recorded on audit_log using brin (recorded_min, recorded_max);
create index audit_log_terms on audit_log using gin (terms);

create function audit_log_is_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_log is append-only: % refused', tg_op using errcode = 'insufficient_privilege';
end;
$$;
create trigger audit_log_no_change before update or delete on audit_log
    for each row execute function audit_log_is_append_only();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_is_append_only();
-- Where the server's role is not the table owner, privileges refuse the same (the owner and
-- superusers are stopped by the triggers above).
revoke update, delete, truncate on audit_log from public;

-- Events of writes, inserted in the same transaction as the change they describe and linked into
-- the chain moments later by the server's audit writer (or by `fhirgate audit verify`).
create table audit_inbox (
    inbox_id bigserial     primary key,
    -- the events of one write transaction, one JSON text per line (without their ids)
    events   text          not null,
    recorded timestamptz[] not null,
    -- each event's search terms, one per line; events separated by U+001E
    terms    text          not null
);

-- Users who may read the whole trail on the auditor page (`fhirgate user auditor --email …`).
alter table app_user add column auditor boolean not null default false;
