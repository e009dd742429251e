-- Consumers, API keys and the audit log. Times are Unix milliseconds.
CREATE TABLE consumers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    consumer_id  TEXT NOT NULL REFERENCES consumers(id),
    secret_hash  TEXT NOT NULL,
    scopes       TEXT NOT NULL DEFAULT '',
    rate_limit   TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    rotated_to   TEXT,
    last_used_at BIGINT,
    usage_count  BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX api_keys_consumer ON api_keys (consumer_id);
CREATE INDEX api_keys_updated ON api_keys (updated_at);

CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY,
    id          TEXT NOT NULL,
    time        BIGINT NOT NULL,
    type        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    request_id  TEXT,
    client_ip   TEXT,
    consumer    TEXT,
    route       TEXT,
    details     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_type ON audit_events (type, seq);
CREATE INDEX audit_events_consumer ON audit_events (consumer, seq);
