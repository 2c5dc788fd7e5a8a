"""The master/replica cache: ``backend`` (the Django cache), ``journal`` (writes kept while
the master is down), ``status`` (what the management commands report and replay), ``conf``
(its ``OPTIONS``) and ``checks``."""
