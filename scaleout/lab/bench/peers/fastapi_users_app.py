"""fastapi-users 15, as its documentation's full example sets it up: the SQLAlchemy user database (SQLite
through aiosqlite), a `BearerTransport`, and either the `JWTStrategy` or the `RedisStrategy`.

Run by `make bench` as `uvicorn scaleout.lab.bench.peers.fastapi_users_app:app` with PEER_STRATEGY=jwt or
redis, PEER_DATABASE (a SQLite file) and, for redis, PEER_REDIS_URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio
from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy, RedisStrategy
from fastapi_users.authentication.strategy import Strategy
from fastapi_users.db import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

SECRET = os.environ.get("PEER_SECRET", "bench-only-secret-not-for-production-0123456789")
DATABASE_URL = f"sqlite+aiosqlite:///{os.environ.get('PEER_DATABASE', 'fastapi_users.db')}"
STRATEGY = os.environ.get("PEER_STRATEGY", "jwt")


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


engine = create_async_engine(DATABASE_URL)
async_session_maker = async_sessionmaker(engine, expire_on_commit=False)


async def get_async_session() -> AsyncGenerator[AsyncSession, None]:
    async with async_session_maker() as session:
        yield session


async def get_user_db(
    session: AsyncSession = Depends(get_async_session),
) -> AsyncGenerator[SQLAlchemyUserDatabase[User, uuid.UUID], None]:
    yield SQLAlchemyUserDatabase(session, User)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


async def get_user_manager(
    user_db: SQLAlchemyUserDatabase[User, uuid.UUID] = Depends(get_user_db),
) -> AsyncGenerator[UserManager, None]:
    yield UserManager(user_db)


bearer_transport = BearerTransport(tokenUrl="auth/login")
redis_client = redis.asyncio.from_url(os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379"), decode_responses=True)


def get_strategy() -> Strategy[User, uuid.UUID]:
    if STRATEGY == "redis":
        return RedisStrategy(redis_client, lifetime_seconds=3600)
    return JWTStrategy(secret=SECRET, lifetime_seconds=3600)


auth_backend = AuthenticationBackend(name=STRATEGY, transport=bearer_transport, get_strategy=get_strategy)
fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])
current_active_user = fastapi_users.current_user(active=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield


app = FastAPI(lifespan=lifespan)
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth", tags=["auth"])
app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth", tags=["auth"])


@app.get("/unauthenticated-route")
async def unauthenticated_route() -> dict[str, str]:
    return {"message": "Hello!"}


@app.get("/authenticated-route")
async def authenticated_route(user: User = Depends(current_active_user)) -> dict[str, str]:
    return {"message": f"Hello {user.email}!"}
