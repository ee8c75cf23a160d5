-- The data classes of each Observation beside its code and date, so a partner's patient-scoped
-- search filters by consent in the same range scan.
alter table obs_code_date add column classes text[];
update obs_code_date o set classes = r.classes from resource r where r.rid = o.rid;
