import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from pgtenancy import instrument
from pgtenancy.asgi import JWTClaimResolver, TenantMiddleware

engine = instrument(create_async_engine(os.environ["DATABASE_URL"]))


async def invoices(request):
    async with engine.connect() as conn:  # the middleware bound the caller's tenant
        rows = await conn.execute(text("SELECT body FROM invoices ORDER BY body"))
        return JSONResponse(rows.scalars().all())


resolver = JWTClaimResolver("tenant_id", key=os.environ["JWT_KEY"], algorithms=["HS256"])
app = Starlette(
    routes=[Route("/invoices", invoices)],
    middleware=[Middleware(TenantMiddleware, resolver=resolver, exempt_paths=["/health"])],
)
