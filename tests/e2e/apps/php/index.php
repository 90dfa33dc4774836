<?php
// The PHP app behind the proxies in tests/e2e/test_differential.py, under PHP's built-in server
// (`php -S 127.0.0.1:PORT index.php`: this script routes every request). A front controller as
// PHP apps write them: the path percent-decoded (so `%2F` is a slash), slashes merged, trailing
// slash dropped; no dispatch on the method. It reads the token the way PHP does (`$_GET`, whose
// names PHP mangles: `api.key`, `api key` and `api[key` are all `api_key`; `$_SERVER` for the
// headers) and echoes what it read, how it routed, and what the gate said, as JSON, in the
// X-Upstream-Echo header (so HEAD shows it too) and the body.

$uri = $_SERVER['REQUEST_URI'] ?? '/';
$path = rawurldecode((string) (parse_url($uri, PHP_URL_PATH) ?? '/'));
$path = '/' . trim((string) preg_replace('#/+#', '/', $path), '/');

if ($path === '/') {
    $route = 'home';
} elseif ($path === '/status') {
    $route = 'status';
} elseif ($path === '/v1/data') {
    $route = 'data';
} elseif (str_starts_with($path, '/v1/')) {
    $route = 'v1';
} else {
    $route = null;
}

$bearer = null;
if (preg_match('/^Bearer\s+(\S+)\s*$/i', $_SERVER['HTTP_AUTHORIZATION'] ?? '', $m)) {
    $bearer = $m[1];
}

$echo = [
    'app' => 'php',
    'method' => $_SERVER['REQUEST_METHOD'] ?? '',
    'path' => $uri,
    'route' => $route,
    'protected' => $route === 'data' || $route === 'v1',
    'tokens' => [
        'query' => $_GET['api_key'] ?? null,
        'header' => $_SERVER['HTTP_X_API_KEY'] ?? null,
        'bearer' => $bearer,
    ],
    'fingerprint' => $_SERVER['HTTP_X_TOKEN_FINGERPRINT'] ?? null,
    'access' => $_SERVER['HTTP_X_TOKEN_ACCESS'] ?? null,
];
$json = json_encode($echo, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);

http_response_code($route === null ? 404 : 200);
header('Content-Type: application/json');
header('X-Upstream-Echo: ' . $json);
echo $json;
