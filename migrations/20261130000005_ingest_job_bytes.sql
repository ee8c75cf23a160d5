-- Progress of a background import in bytes of the upload, so a client can show a percentage.
alter table ingest_job
    add column bytes_read  bigint not null default 0,
    add column bytes_total bigint not null default 0;
