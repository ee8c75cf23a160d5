-- Background imports of large uploads (an Apple Health export): the status a client polls.
create table ingest_job (
    job_id     uuid        primary key,
    patient    text        not null,
    source     text        not null,
    status     text        not null check (status in ('running', 'done', 'failed')),
    records    bigint      not null default 0,
    summary    jsonb,
    error      text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
