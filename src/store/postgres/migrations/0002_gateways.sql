-- Several gateways on one database: who drives each service, what it last published of the
-- service's status for the others, and each gateway's open connections per service. Expiries
-- are on the database's clock (clock_timestamp()), the one clock every gateway shares.

-- Gateways that are alive, renewed with their leases (for `wakegate status`).
CREATE TABLE gateways (
    id         TEXT PRIMARY KEY,
    started_ms BIGINT NOT NULL,
    expires    TIMESTAMPTZ NOT NULL
);

-- The owner of a service holds its row until `expires`; another gateway may take it only once
-- it has expired (or was released). The status columns are the owner's, for the others to
-- mirror: state, since, the backend's address while awake, the last error.
CREATE TABLE service_owners (
    service    TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    taken      TIMESTAMPTZ NOT NULL,
    expires    TIMESTAMPTZ NOT NULL,
    state      TEXT,
    since_ms   BIGINT,
    address    TEXT,
    last_error TEXT
);

-- Open connections and players of one service through one gateway; a row counts until it
-- expires, so a dead gateway's clients stop counting after a lease time.
CREATE TABLE service_counts (
    service     TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    connections BIGINT NOT NULL,
    expires     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (service, gateway)
);
