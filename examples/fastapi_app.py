import os
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from pgtenancy import instrument
from pgtenancy.asgi import FASTAPI_DOCS, JWTClaimResolver, TenantMiddleware, get_tenant_id

Session = async_sessionmaker(instrument(create_async_engine(os.environ["DATABASE_URL"])))

app = FastAPI()
app.add_middleware(
    TenantMiddleware,
    resolver=JWTClaimResolver("tenant_id", key=os.environ["JWT_KEY"], algorithms=["HS256"]),
    exempt_paths=FASTAPI_DOCS,  # /docs, /docs/oauth2-redirect, /redoc, /openapi.json
)


@app.get("/invoices")
async def invoices(tenant_id: Annotated[str, Depends(get_tenant_id)]):
    async with Session() as session:
        bodies = await session.scalars(text("SELECT body FROM invoices ORDER BY body"))
        return {"tenant": tenant_id, "invoices": bodies.all()}
