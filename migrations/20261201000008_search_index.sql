-- Search indexes driven by the R4 SearchParameter definitions (see src/search/). Index rows
-- describe the current version of a resource only: a write replaces its rows in the same
-- transaction, and a delete removes them. Every row carries the resource's patient compartment,
-- so consent and compartment filters are plain predicates.

-- A short surrogate key for index rows.
alter table resource add column rid bigint generated always as identity;
create unique index resource_rid on resource (rid);
create index resource_type_rid on resource (resource_type, rid) where not deleted;

-- One id per (resource type, parameter code); pseudo-codes such as `code:text` and
-- `subject:identifier` hold what modifiers search.
create table search_param (
    pid           integer generated always as identity primary key,
    resource_type text not null,
    code          text not null,
    unique (resource_type, code)
);

-- token and uri values (uri: `code` only).
create table idx_token (
    rid         bigint  not null,
    pid         integer not null,
    compartment text,
    system      text collate "C",
    code        text collate "C"
);
-- (pid, code) serves a code over everyone; with the compartment, one patient's rows of it.
create index idx_token_code on idx_token (pid, code, compartment, system);
create index idx_token_rid on idx_token (rid);

-- string values, normalised (lower case, accents removed) and as written.
create table idx_string (
    rid         bigint  not null,
    pid         integer not null,
    compartment text,
    norm        text collate "C" not null,
    exact       text collate "C" not null
);
create index idx_string_norm on idx_string (pid, norm);
create index idx_string_rid on idx_string (rid);

-- date values as inclusive ranges of instants.
create table idx_date (
    rid         bigint      not null,
    pid         integer     not null,
    compartment text,
    low         timestamptz not null,
    high        timestamptz not null
);

create index idx_date_high on idx_date (pid, high);
create index idx_date_rid on idx_date (rid, pid);
-- One patient's dates of a parameter, newest last: the hot wearable query.
create index idx_date_compartment on idx_date (compartment, pid, high) where compartment is not null;

-- number and quantity values; a Range keeps its ends in low and high.
create table idx_number (
    rid         bigint  not null,
    pid         integer not null,
    compartment text,
    low         double precision,
    high        double precision,
    system      text collate "C",
    code        text collate "C",
    unit        text
);
create index idx_number_low on idx_number (pid, low);
create index idx_number_rid on idx_number (rid);

-- reference values: `Type/id`, an absolute URL, or `#contained`.
create table idx_reference (
    rid         bigint  not null,
    pid         integer not null,
    compartment text,
    target      text collate "C" not null
);
create index idx_reference_target on idx_reference (pid, target);
create index idx_reference_rid on idx_reference (rid, pid);

-- composite values: a token first component, then a token, number/quantity, date or string.
create table idx_composite (
    rid         bigint  not null,
    pid         integer not null,
    compartment text,
    system1     text collate "C",
    code1       text collate "C",
    system2     text collate "C",
    code2       text collate "C",
    num         double precision,
    low         timestamptz,
    high        timestamptz
);
create index idx_composite_code on idx_composite (pid, code1);
create index idx_composite_rid on idx_composite (rid);

-- Keyed HMAC blind indexes of values that identify a person: exact and prefix hashes of names,
-- addresses, identifiers, telecom and birth dates. Nothing here can be read back.
create table idx_blind (
    rid         bigint  not null,
    pid         integer not null,
    compartment text,
    hash        bytea   not null
);
create index idx_blind_hash on idx_blind (pid, hash);
create index idx_blind_rid on idx_blind (rid);

-- What each patient's Consents grant, by partner, purpose and data class, over [valid_from,
-- valid_to). Rebuilt from the Consents on every Consent write, so searches filter with a join and
-- decrypt nothing. `code_rules` marks patients whose Consents also name single codes: their
-- results are checked code by code as well.
create table consent_grant (
    patient      text        not null,
    organization text        not null,
    purpose      text        not null,
    class        text        not null,
    valid_from   timestamptz not null,
    valid_to     timestamptz not null,
    code_rules   boolean     not null
);
create index consent_grant_lookup on consent_grant (organization, patient, class);
create index consent_grant_patient on consent_grant (patient);

-- Which definitions the index was built from (`fhirgate reindex` and start-up compare it).
create table search_index_state (
    id          integer primary key check (id = 1),
    fingerprint text not null
);
