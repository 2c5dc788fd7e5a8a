from django.db import migrations, models

import distinct_counter.indexes.constraints


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("indexapp", "0001_initial"),
    ]

    operations = [
        distinct_counter.indexes.constraints.AddUniqueConstraintConcurrently(
            model_name="visit",
            constraint=models.UniqueConstraint(
                fields=["referrer", "country"], name="indexapp_visit_referrer_uniq"
            ),
            lock_timeout="100ms",
            retries=4,
        ),
        distinct_counter.indexes.constraints.AddUniqueConstraintConcurrently(
            model_name="visit",
            constraint=models.UniqueConstraint(
                fields=["city"],
                condition=models.Q(country="FR"),
                name="indexapp_visit_city_fr_uniq",
            ),
        ),
    ]
