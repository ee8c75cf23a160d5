-- The encrypted resource store: data keys, resource versions, the current-version pointer,
-- the identifier blind index and the conditional-create guard. See migrations/README.md.

-- One random data key (DEK) per patient compartment ('' = system, '#index' = blind-index key).
create table data_key (
    key_id      bigint generated always as identity primary key,
    compartment text        not null unique,
    created_at  timestamptz not null default now()
);

-- A DEK wrapped by a master key (KEK). Several rows per DEK during a key rotation.
create table data_key_wrapping (
    key_id     bigint      not null references data_key (key_id) on delete cascade,
    kek_id     text        not null,
    wrapped    bytea       not null,
    created_at timestamptz not null default now(),
    primary key (key_id, kek_id)
);

-- Every version of every resource. `body` is [nonce][AES-256-GCM ciphertext] of the canonical
-- JSON with AAD 'type/id/version'; a tombstone (delete) has no body.
create table resource_version (
    resource_type text        not null,
    id            text        not null,
    version_id    integer     not null,
    compartment   text,
    deleted       boolean     not null,
    last_updated  timestamptz not null,
    key_id        bigint references data_key (key_id),
    body          bytea,
    primary key (resource_type, id, version_id),
    check (deleted = (body is null))
);
create index resource_version_type_updated on resource_version (resource_type, last_updated);
create index resource_version_updated on resource_version (last_updated);

-- The current version of each resource: reads never scan history.
create table resource (
    resource_type text        not null,
    id            text        not null,
    version_id    integer     not null,
    compartment   text,
    deleted       boolean     not null,
    last_updated  timestamptz not null,
    primary key (resource_type, id)
);
create index resource_compartment on resource (compartment) where compartment is not null;

-- Blind index of Resource.identifier (HMAC under the index key; see src/crypto.rs): one row per
-- identifier of each version. Searches join `resource` on the current version, so an update adds
-- rows and never deletes any. `value_hash` answers `identifier=value` (narrowed by `system_hash`
-- for `system|value` and `|value`); `system_hash` alone answers `identifier=system|`.
create table resource_identifier (
    resource_type text    not null,
    id            text    not null,
    version_id    integer not null,
    value_hash    bytea   not null,
    system_hash   bytea   not null
);
create index resource_identifier_value on resource_identifier (value_hash);
create index resource_identifier_system on resource_identifier (system_hash);

-- Conditional create: one row per (type, blind hash of the normalised criteria). The primary key
-- makes concurrent `If-None-Exist` creates of the same criteria produce exactly one resource.
create table conditional_create (
    resource_type text        not null,
    criteria      bytea       not null,
    id            text        not null,
    created_at    timestamptz not null default now(),
    primary key (resource_type, criteria)
);
