-- What the SQLite store holds (its six first migrations), in PostgreSQL. Times are
-- milliseconds since the epoch, as in SQLite, so both engines read and write the same values.

-- Event ids come from this one row, taken in the writing transaction: a gateway that writes
-- events holds the row until it commits, so ids follow the order of commits, and a rolled-back
-- transaction gives its ids back (a sequence would leave a gap, and a reader of `id > N` could
-- pass over an event committed late with a lower id).
CREATE TABLE event_ids (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    last_id  BIGINT NOT NULL
);
INSERT INTO event_ids (last_id) VALUES (0);

CREATE TABLE events (
    id      BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    service TEXT NOT NULL,
    kind    TEXT NOT NULL,
    state   TEXT NOT NULL,
    reason  TEXT NOT NULL,
    detail  JSONB
);
CREATE INDEX events_by_service ON events (service, id);
CREATE INDEX transitions_by_service ON events (service, kind, time_ms);

CREATE TABLE services (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    since_ms   BIGINT NOT NULL,
    last_error TEXT
);

CREATE TABLE leases (
    id         BIGSERIAL PRIMARY KEY,
    service    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    ended_ms   BIGINT
);
CREATE INDEX leases_by_service ON leases (service, expires_ms);

-- The notification outbox: per [[notify]] target, the id of the last event it is done with.
CREATE TABLE notify_cursors (
    target     TEXT PRIMARY KEY,
    last_id    BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- What a backend must find again after a restart (the ARN of the ECS task it ran).
CREATE TABLE backend_values (
    service TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (service, key)
);

-- Services created from a [[template]] at run time; an ended one is kept for history.
CREATE TABLE created_services (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    template     TEXT NOT NULL,
    owner        TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    deadline_ms  BIGINT NOT NULL,
    ended_ms     BIGINT,
    end_reason   TEXT,
    port         INTEGER,
    backend_port INTEGER
);
CREATE UNIQUE INDEX created_services_live ON created_services (name) WHERE ended_ms IS NULL;

-- The private Discord channel of a created service and its status message (snowflakes as text).
CREATE TABLE created_channels (
    created_id BIGINT PRIMARY KEY REFERENCES created_services (id),
    guild      TEXT NOT NULL,
    channel    TEXT NOT NULL,
    message    TEXT
);
