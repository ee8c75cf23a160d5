-- A store of millions of Observations and a thousand Patients: with the default sample the
-- planner may see no Patient at all, estimate one row for resource_type = 'Patient', and pick
-- joins that scan every Patient per probe (a chain by identifier went from 1 ms to 130 ms).
-- A larger sample keeps the rarer types among the most common values.
alter table resource alter column resource_type set statistics 1000;
