"""Zero-downtime index migrations: ``operations`` (``CreateIndexConcurrently`` and
``DropIndexConcurrently``, usable in any migration) and ``planner`` (which counted fields
lack an index, and the migration that adds them: ``manage.py counted_indexes``)."""
