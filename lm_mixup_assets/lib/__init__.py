"""Pure helpers: no Dagster imports here, so each piece is testable on its own."""
