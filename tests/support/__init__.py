"""What the tests share: a real redis-server and gateway, the cast of identities, a fleet of
resuming consumers, hand-written fakes, and the visibility oracle."""
