from django.apps import AppConfig


class TypesConfig(AppConfig):
    name = "tests.typesapp"
    label = "typesapp"
    default_auto_field = "django.db.models.BigAutoField"
