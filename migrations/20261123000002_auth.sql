-- SMART on FHIR: the server's token-signing keys, registered clients and replay protection.

-- Token-signing key pairs. The private key is sealed with the system data key (src/crypto.rs,
-- AAD 'signing_key/<kid>'); the public JWK is published at the JWKS endpoint.
create table signing_key (
    kid         text        primary key,
    algorithm   text        not null,
    private_key bytea       not null,
    key_id      bigint      not null references data_key (key_id),
    public_jwk  jsonb       not null,
    created_at  timestamptz not null default now(),
    retired_at  timestamptz
);

-- Registered OAuth clients: apps (authorization code + PKCE) and backends (client_credentials
-- with private_key_jwt). A backend with an organization is a partner; consent filters it.
create table client (
    client_id     text        primary key,
    kind          text        not null check (kind in ('app', 'backend')),
    scopes        text        not null,
    redirect_uris text[]      not null default '{}',
    confidential  boolean     not null default false,
    secret_hash   text,
    jwks          jsonb,
    organization  text,
    created_at    timestamptz not null default now()
);

-- Client assertion ids already used, kept until the assertion expires (SMART Backend Services:
-- a jti is single use). The primary key makes concurrent replays lose.
create table client_assertion_jti (
    client_id  text        not null,
    jti        text        not null,
    expires_at timestamptz not null,
    primary key (client_id, jti)
);
create index client_assertion_jti_expiry on client_assertion_jti (expires_at);

-- Revoked access tokens (by jti) until they would have expired anyway. Servers poll this table
-- every second, so a revocation takes effect within seconds without a lookup per request.
create table revoked_token (
    jti        text        primary key,
    expires_at timestamptz not null,
    revoked_at timestamptz not null default now()
);
create index revoked_token_revoked_at on revoked_token (revoked_at);
