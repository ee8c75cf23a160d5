-- Clients removed while their access tokens were still live: every token a client was issued
-- before its removal is refused. Servers poll this table with `revoked_token`, so a removal
-- takes effect within seconds everywhere.
create table revoked_client (
    client_id  text        primary key,
    revoked_at timestamptz not null default now()
);
