"""Several SMS providers: their settings (a TOML file), routes between them, their health and rates."""
