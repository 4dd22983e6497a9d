"""The command line: argument parsing, progress display and menus. No pipeline logic here."""
