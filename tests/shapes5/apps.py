from django.apps import AppConfig


class Shapes5Config(AppConfig):
    """Model shapes that need Django 5.0 or later (generated fields, database defaults)."""

    name = "tests.shapes5"
    label = "shapes5"
    default_auto_field = "django.db.models.BigAutoField"
