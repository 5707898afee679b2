"""syncengine keeps a school's Moodle in step with its Zoho CRM: one flat package, one module per job (README.md)."""
