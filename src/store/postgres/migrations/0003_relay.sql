-- A pre-stop the owner waits for (the agent's request, as JSON), mirrored so that an agent
-- whose reports reach another gateway is still asked for it there.
ALTER TABLE service_owners ADD COLUMN pre_stop TEXT;
