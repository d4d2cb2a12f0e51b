"""The web console (`/console`): server-rendered pages for support and admins.

Every page and every form goes through the JSON API's own routes: `ApiCaller`
finds the route in the table the app was built from, admits the caller with
`core.http.app.admit` (plugin on? one of the route's roles?), validates the
form as the route's body model and calls the route's handler. The console
therefore shows and allows exactly what the JSON API does for the same token.
"""

from core.console.app import console_app

__all__ = ["console_app"]
