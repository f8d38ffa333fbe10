"""spinectl: the offline operator CLI of Alpine Spine (typer + rich)."""
