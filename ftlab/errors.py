"""User-facing errors: one line naming the field and the fix; the CLI turns them into exit code 2."""


class FtlabError(Exception):
    """An error caused by the user's input (config, dataset, model folder), shown without traceback."""


class ConfigError(FtlabError):
    """Several configuration problems collected and reported at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = self.problems[0]
        else:
            msg = f"{len(self.problems)} config problems: " + "; ".join(self.problems)
        super().__init__(msg)
