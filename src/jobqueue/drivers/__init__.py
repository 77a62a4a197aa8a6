"""The driver layer: the only code that touches a DB-API driver (psycopg, asyncpg, sqlite3).

- `engines`: URLs, engines and how their connections are set up;
- `errors`: driver errors as our own (by SQLSTATE where the driver gives one);
- `runner`: runs an operation's steps on a connection, the queue's one way in here;
- `direct` and `copy`: the steps SQLAlchemy does not run itself (the fast path, COPY),
  on the driver connection (`raw`); `plans`: the session mode in which the worker's
  claims and completions keep one plan on the server;
- `sqlite_thread`: SQLite transactions run whole on the aiosqlite connection's thread, so
  the write lock is never held across turns of the event loop;
- `listen`: LISTEN/NOTIFY on a connection of its own.

Below it, `jobqueue.sql` builds statements and never connects; above it, the queue runs
operations through a runner and never learns which driver it has.
"""
