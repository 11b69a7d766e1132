def main() -> int:  # replaced by the bench CLI
    raise SystemExit("not yet")
