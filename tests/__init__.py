"""The test suite: real SQLite files, PostgreSQL and HTTP servers on 127.0.0.1, no mocks of our own code."""
