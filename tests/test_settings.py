import pytest

from app.settings import DEFAULT_DATABASE_URL, SettingsError, load_settings


def test_defaults_to_the_embedded_sqlite_file():
    settings = load_settings({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.admin_token is None


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"EARMARK_ADMIN_TOKEN": "short"}, "EARMARK_ADMIN_TOKEN"),
        ({"EARMARK_ADMIN_TOKEN": "sk-bf-looks-like-a-tenant-key"}, "EARMARK_ADMIN_TOKEN"),
        ({"EARMARK_DATABASE_URL": "mysql://root@localhost/x"}, "EARMARK_DATABASE_URL"),
        ({"EARMARK_DATABASE_URL": "postgresql://postgres@localhost/x"}, "EARMARK_DATABASE_URL"),
    ],
)
def test_bad_settings_name_the_variable(environ, named):
    with pytest.raises(SettingsError, match=named):
        load_settings(environ)
