-- Observations without a date are found by code too (a search by patient and code alone, and
-- $lastn, read obs_code_date): their codings get rows with no date range.
alter table obs_code_date alter column low drop not null, alter column high drop not null;

insert into obs_code_date (rid, compartment, system, code, low, high, classes)
select t.rid, t.compartment, t.system, t.code, null, null, r.classes
from idx_token t
join resource r on r.rid = t.rid
where t.pid = (select pid from search_param where resource_type = 'Observation' and code = 'code')
  and t.compartment is not null
  and not exists (select 1 from obs_code_date o where o.rid = t.rid);

-- Newest first with undated rows last: the order the per-patient search pages in and $lastn
-- stops early in, read straight off the index (date ranges still use it as before).
create index obs_code_date_newest on obs_code_date (compartment, code, high desc nulls last);
drop index obs_code_date_patient;
