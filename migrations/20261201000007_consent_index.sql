-- What consent enforcement filters on in SQL (DESIGN.md, "Consent"); the Consents themselves stay
-- encrypted like every body.
--
-- `resource.classes`: the data classes of the current version (from its categories), so that a
-- partner's search keeps only rows of permitted (patient, class) pairs.
alter table resource add column classes text[];

-- `consent_party`: for each current Consent, its patient and the organisations it names, so that
-- a partner finds the patients whose Consents concern it without decrypting every Consent.
create table consent_party (
    consent_id    text   primary key,
    patient       text   not null,
    organizations text[] not null
);
create index consent_party_organizations on consent_party using gin (organizations);
