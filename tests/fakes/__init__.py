"""Local fakes of the outside world that speak real wire formats (see openai_upstream.FakeOpenAI)."""
