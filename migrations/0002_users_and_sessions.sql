-- Local users and login sessions. Times are Unix milliseconds.
CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    -- argon2id (PHC string), or a legacy bcrypt hash until the next login.
    password_hash  TEXT NOT NULL,
    roles          TEXT NOT NULL DEFAULT '',
    disabled_at    BIGINT,
    created_at     BIGINT NOT NULL,
    last_login_at  BIGINT,
    updated_at     BIGINT NOT NULL
);

-- A session is found by the SHA-256 of its ID (the cookie holds the ID, the
-- store never does). Provider tokens are AES-256-GCM encrypted.
CREATE TABLE sessions (
    id_hash       TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    provider      TEXT NOT NULL,
    email         TEXT,
    name          TEXT,
    roles         TEXT NOT NULL DEFAULT '',
    tokens        TEXT,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX sessions_updated ON sessions (updated_at);
CREATE INDEX sessions_user ON sessions (username);
