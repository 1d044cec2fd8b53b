"""What every HTTP request goes through, whatever its protocol: the middlewares in their
order, the state on ``app.state``, request ids and deadlines, the one error mapping, and the
routes shared by both protocols (health, admin, metrics). Never imports a protocol."""
