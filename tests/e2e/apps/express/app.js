// The Express app behind the proxies in tests/e2e/test_differential.py: `node app.js PORT`.
// Express 4 as configured by default: routes match case-insensitively and with or without a
// trailing slash, `app.all` does not dispatch on the method, `req.query` is parsed by `qs`
// (`api_key[]=x` is an array, `api_key[a]=x` an object). It echoes the token it read, how it
// routed, and what the gate said, as JSON, in the X-Upstream-Echo header (so HEAD shows it too)
// and the body.
'use strict';
const express = require('express');

const app = express();

function echo(route) {
  return (req, res) => {
    const authorization = req.get('authorization') || '';
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    const seen = {
      app: 'express',
      method: req.method,
      path: req.originalUrl,
      route,
      protected: route === 'data' || route === 'v1',
      tokens: {
        query: req.query.api_key === undefined ? null : req.query.api_key,
        header: req.get('x-api-key') === undefined ? null : req.get('x-api-key'),
        bearer: bearer ? bearer[1] : null,
      },
      fingerprint: req.get('x-token-fingerprint') === undefined ? null : req.get('x-token-fingerprint'),
      access: req.get('x-token-access') === undefined ? null : req.get('x-token-access'),
    };
    const json = JSON.stringify(seen).replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
    res.status(route === null ? 404 : 200);
    res.set('X-Upstream-Echo', json);
    res.type('application/json').send(json);
  };
}

app.get('/', echo('home'));
app.get('/status', echo('status'));
app.all('/v1/data', echo('data'));
app.all('/v1/*', echo('v1'));
app.use(echo(null));

const port = Number(process.argv[2]);
app.listen(port, '127.0.0.1');
