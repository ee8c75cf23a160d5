-- Writes retried with an Idempotency-Key: the key is claimed in the write's own transaction, so
-- a retry of a committed write can never write again; its answer is kept (sealed) to replay.
create table idempotent_request (
    caller       text        not null,
    key          text        not null,
    request_hash bytea       not null,
    -- null until the answer is recorded (just after the commit)
    status       integer,
    headers      jsonb,
    body         text,
    created_at   timestamptz not null default now(),
    primary key (caller, key)
);

create index idempotent_request_created on idempotent_request (created_at);
