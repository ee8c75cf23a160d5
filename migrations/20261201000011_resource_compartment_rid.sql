-- A patient's resources in rid order: compartment searches, $everything and chained searches
-- that resolve to one patient page through it without sorting the patient's whole record.
create index resource_compartment_rid on resource (compartment, rid) where not deleted;
