"""The connection form for Airflow 3.1, built from the declarative ``conn-fields`` (one source).

Airflow 3.2+ reads ``conn-fields`` and ``ui-field-behaviour`` from the provider info and never calls
the hook's form methods. Airflow 3.1 only knows the hook methods returning WTForms fields; its API
server imports them with mocks standing in for WTForms and Flask-AppBuilder, so nothing here may be
imported at module level.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow_provider_salesforce_bulk.get_provider_info import conn_fields, ui_field_behaviour

__all__ = ["connection_form_widgets", "ui_field_behaviour_for_hook"]


def connection_form_widgets() -> dict[str, Any]:
    """WTForms fields for every extra of the connection, keyed by the plain extra name."""
    from flask_appbuilder.fieldwidgets import (
        BS3PasswordFieldWidget,
        BS3TextAreaFieldWidget,
        BS3TextFieldWidget,
    )
    from flask_babel import lazy_gettext
    from wtforms import PasswordField, StringField
    from wtforms.validators import Optional, any_of

    if sys.version_info < (3, 11):  # pragma: no cover (Python 3.10)
        import wtforms.validators

        # Without WTForms the 3.1 API server stands in one mock per module and patches the validators
        # through the attribute chain, as unittest.mock resolves a target on 3.10 (by import from 3.11):
        # read them the same way, or the auth type loses its choices. With WTForms both are the same.
        Optional, any_of = wtforms.validators.Optional, wtforms.validators.any_of

    widgets: dict[str, Any] = {}
    for name, field in conn_fields().items():
        schema = field["schema"]
        label = lazy_gettext(field["label"])
        description = field.get("description", "")
        if schema.get("format") == "password":
            widgets[name] = PasswordField(label, widget=BS3PasswordFieldWidget(), description=description)
            continue
        validators: list[Any] = [Optional()]
        if "enum" in schema:
            validators.append(any_of(schema["enum"]))
        widget = BS3TextAreaFieldWidget() if schema.get("format") == "multiline" else BS3TextFieldWidget()
        widgets[name] = StringField(
            label,
            validators=validators,
            widget=widget,
            description=description,
            default=schema.get("default"),
        )
    return widgets


def ui_field_behaviour_for_hook() -> dict[str, Any]:
    """``ui-field-behaviour`` with the hook method's snake_case keys."""
    behaviour = ui_field_behaviour()
    return {
        "hidden_fields": list(behaviour["hidden-fields"]),
        "relabeling": dict(behaviour["relabeling"]),
        "placeholders": dict(behaviour["placeholders"]),
    }
