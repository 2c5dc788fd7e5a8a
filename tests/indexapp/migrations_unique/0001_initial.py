from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Visit",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("city", models.CharField(max_length=100)),
                ("referrer", models.CharField(blank=True, default="", max_length=200)),
                ("country", models.CharField(db_index=True, max_length=2)),
            ],
        ),
    ]
