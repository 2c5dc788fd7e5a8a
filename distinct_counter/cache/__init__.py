"""The master/replica cache: ``client`` (the django-redis client class), ``node`` (where
each command goes, per process), ``commands`` (what it knows of Redis commands), ``journal``
(writes kept while the master is down), ``status`` (what the management commands report and
replay), ``conf`` (its ``OPTIONS``) and ``checks``."""
