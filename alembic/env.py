"""The repository's Alembic environment: the package's own, so there is one of each."""

from alembic import context
from jobqueue.migrations import run_env

run_env(context)
