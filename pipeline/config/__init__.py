"""The experiment config: typed dataclasses (schema), the YAML reader, and the checks a parsed config passes."""
