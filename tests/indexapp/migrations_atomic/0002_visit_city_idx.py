from django.db import migrations, models

import distinct_counter.indexes.operations


class Migration(migrations.Migration):
    # Missing atomic = False on purpose: the operation must refuse to run.

    dependencies = [
        ("indexapp", "0001_initial"),
    ]

    operations = [
        distinct_counter.indexes.operations.CreateIndexConcurrently(
            model_name="visit",
            index=models.Index(fields=["city"], name="indexapp_visit_city_idx"),
        ),
    ]
