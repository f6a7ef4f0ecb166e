"""The front doors: each converts its transport's shapes to the core's and maps the one error
taxonomy to its status codes; none holds rank logic of its own."""
