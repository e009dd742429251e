-- Spill replay looks events up by their ID to skip those already stored;
-- without an index that is a scan of the whole table per lookup.
CREATE INDEX audit_events_id ON audit_events (id);
