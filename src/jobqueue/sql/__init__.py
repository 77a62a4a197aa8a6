"""The SQL layer: tables, dialect constructs and every statement, built with SQLAlchemy
Core. Nothing here opens a connection or imports a driver.

- `table`: the jobs table (columns, indexes, bounds), the live-workers table, the rules
  for the names derived from the jobs table's name;
- `dialect`: the few constructs whose SQL differs between PostgreSQL and SQLite;
- `steps`: what an operation yields to be run (`Query`, `Direct`, `CopyRows`);
- `statements`: `Statements`, every statement on the jobs table, written by topic in
  `enqueue`, `claim`, `held` and `manage` on what `common` shares;
- `presence`: the statements on the live-workers table;
- `rls`: the row-level security SQL for Supabase.
"""
