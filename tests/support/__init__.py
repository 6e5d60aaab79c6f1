"""What the tests share and is not a test: helpers, fakes, stand-ins and servers of the tests' own."""
