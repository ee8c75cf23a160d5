-- SMART App Launch: patients who sign in, their browser sessions, and the grants they give apps
-- (authorization codes, the access tokens issued from them, and rotating refresh tokens).

-- A patient who signs in with email and password. The email is kept only as a keyed blind index
-- (HMAC of the normalised address), so the table holds no readable contact detail; the password
-- is an argon2id PHC string. Each user is linked to the Patient resource that is their record.
create table app_user (
    user_id       uuid        primary key,
    email_index   bytea       not null unique,
    password_hash text        not null,
    patient_id    text        not null,
    created_at    timestamptz not null default now()
);

-- Signed-in browser sessions, by the SHA-256 of the cookie value (the cookie itself is never stored).
create table ui_session (
    session_hash bytea       primary key,
    user_id      uuid        not null references app_user (user_id) on delete cascade,
    expires_at   timestamptz not null
);
create index ui_session_expiry on ui_session (expires_at);

-- One approval of an app by a user: the family of every code, access token and refresh token
-- that follows from it. Revoking the grant (code reuse, refresh-token reuse) ends them all.
create table oauth_grant (
    grant_id   uuid        primary key,
    client_id  text        not null,
    user_id    uuid        not null references app_user (user_id) on delete cascade,
    patient_id text        not null,
    scope      text        not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);

-- Authorization codes, by SHA-256. Single use: `used_at` is set by the first exchange, and a
-- second exchange revokes the grant.
create table authorization_code (
    code_hash      bytea       primary key,
    grant_id       uuid        not null references oauth_grant (grant_id) on delete cascade,
    redirect_uri   text        not null,
    code_challenge text        not null,
    nonce          text,
    expires_at     timestamptz not null,
    used_at        timestamptz
);

-- Access tokens issued under a grant, so that revoking the grant can revoke them (by jti).
create table grant_access_token (
    jti        text        primary key,
    grant_id   uuid        not null references oauth_grant (grant_id) on delete cascade,
    expires_at timestamptz not null
);
create index grant_access_token_grant on grant_access_token (grant_id);

-- Refresh tokens, by SHA-256. Each is used once and replaced (rotation); presenting a used one
-- again revokes the whole grant.
create table refresh_token (
    token_hash bytea       primary key,
    grant_id   uuid        not null references oauth_grant (grant_id) on delete cascade,
    scope      text        not null,
    expires_at timestamptz not null,
    used_at    timestamptz
);
create index refresh_token_grant on refresh_token (grant_id);
